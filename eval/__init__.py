"""hyrl.eval"""
