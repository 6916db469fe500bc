"""guardian"""
