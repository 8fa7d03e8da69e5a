"""Two-stream action recognition on HMDB51: the logic behind the notebooks.

Data flows one way: videos -> frames/flows -> generators -> models -> scores -> report.
Each module holds one stage; ``utils.config`` is the only module every stage imports.
"""
