"""hyrl.rollout"""
