"""hyrl.rl"""
