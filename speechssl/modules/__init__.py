"""speechssl.modules"""
