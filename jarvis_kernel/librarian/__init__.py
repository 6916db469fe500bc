"""librarian"""
