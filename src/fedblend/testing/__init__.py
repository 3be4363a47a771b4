"""fedblend.testing"""
