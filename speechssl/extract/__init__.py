"""speechssl.extract"""
