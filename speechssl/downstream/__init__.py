"""speechssl.downstream"""
