"""speechssl.train"""
