"""hyrl.tasks"""
