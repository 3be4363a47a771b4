"""fedblend.blend"""
