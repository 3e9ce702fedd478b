"""The two classes every prediction record, statistic and chart speaks of, positive class first.

A leaf module: the record format (engine.runs.predictions) and the statistics (engine.stats.core)
both need these names, and neither may import the other back.
"""

SPEECH, NONSPEECH = "SPEECH", "NONSPEECH"
CLASSES = (SPEECH, NONSPEECH)
