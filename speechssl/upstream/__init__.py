"""speechssl.upstream"""
