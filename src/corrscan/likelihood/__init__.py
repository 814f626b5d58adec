"""corrscan.likelihood"""
