"""reflectioncoder.data"""
