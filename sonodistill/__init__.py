"""sonodistill's core: what every stage (``shards``, ``pretrain``, ``downstream``) shares.

Typed configs (:mod:`.config`), one-line user errors and the CLI wrapper (:mod:`.errors`), atomic
writes (:mod:`.atomic`), JSON-lines logs (:mod:`.jsonl`), launch checks and the Accelerator
(:mod:`.world`), mixed precision (:mod:`.precision`), the optimiser and learning-rate schedule
(:mod:`.optim`), logging and progress (:mod:`.logs`) and DINOv3 loading (:mod:`.dinov3`).
The core imports no stage; stages import it (``downstream -> pretrain -> shards -> sonodistill``).
"""
