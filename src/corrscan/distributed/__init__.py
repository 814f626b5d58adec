"""corrscan.distributed"""
