"""speechssl.data"""
