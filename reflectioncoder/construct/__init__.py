"""reflectioncoder.construct"""
