"""reflectioncoder.train"""
