"""speechssl.audio"""
