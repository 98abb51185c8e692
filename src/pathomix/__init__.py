"""pathomix: multimodal computational pathology as a Snakemake workflow.

Stages run left to right and may import only from stages to their left:
io → demo → tiling → features → genes → splits → models → train → evaluate.
Each stage is ``python -m pathomix.<stage>`` with a ``main(argv)``.
"""

__version__ = "0.1.0"
