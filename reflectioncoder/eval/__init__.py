"""reflectioncoder.eval"""
