"""corrscan.track"""
