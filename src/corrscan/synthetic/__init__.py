"""corrscan.synthetic"""
