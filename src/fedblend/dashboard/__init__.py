"""fedblend.dashboard"""
