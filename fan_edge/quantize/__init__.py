"""Model compression before export: structured pruning (``pruning``), int8 sensitivity (``sensitivity``, on the
simulation of ``fakequant``), quantization-aware training (``qat``) and the compression report (``report``)."""
