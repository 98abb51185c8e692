"""The embedded demo cohort (DESIGN.md §7): synthetic but real-format data with planted signals.

``python -m pathomix.demo --out DIR`` writes pyramidal H&E TIFFs, 7-channel OME-TIFF mIF
images, a clinical sheet, a gene table and the slide sheet (last, as the "done" marker).
"""

from pathomix.demo.generate import generate_cohort

__all__ = ["generate_cohort"]
