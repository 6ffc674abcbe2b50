"""hyrl.model"""
