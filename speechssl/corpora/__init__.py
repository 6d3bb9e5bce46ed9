"""speechssl.corpora"""
