"""`effconv run`: the whole pipeline (distill -> eval -> convert -> quantize -> lint -> profile -> report)
as one resumable command. `plan` resolves what to run, `hashing` says what changed, `stages` calls the
library function of each stage, `runner` decides skip / run / resume, `report` renders the manifests."""
