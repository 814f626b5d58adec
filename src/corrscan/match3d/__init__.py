"""corrscan.match3d"""
