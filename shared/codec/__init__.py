"""The codec half of the contract: profiles that turn media into model streams and back.

profile.py is the interface every codec offers; registry.py knows the codecs and the paper's defaults.
"""
