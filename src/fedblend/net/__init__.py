"""fedblend.net"""
