"""speechssl.integrations"""
