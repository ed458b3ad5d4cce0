"""ALSUV's two Ray Train loops, one per network it trains when no pretrained weights exist:
the generator on the training identities' faces (``generator``) and the margin-loss face
encoders (``encoder``). Each run is named by the content it is trained on, so a finished one
is reused and an interrupted one resumes.
"""
