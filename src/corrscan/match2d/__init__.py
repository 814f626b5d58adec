"""corrscan.match2d"""
