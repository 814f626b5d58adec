"""corrscan.contrast"""
