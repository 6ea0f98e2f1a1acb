"""finetune: the Python client of finetuned, for notebooks.

    import finetune
    c = finetune.Client("trainer:50051", token_file="~/.ft-token")
    job = c.submit(dataset="dataset://flowers", backbone="resnet18", weights="pretrained",
                   freeze_depth="all", epochs=5)
    job = job.wait(progress=True)
    job.state, job.metrics, job.history
    c.download_model(job.model_id, "out/")

Errors raise FinetuneError, with the gRPC `code` and the server's `message`.
"""
from finetune._client import Client, FinetuneError, Job, pack_directory, to_dict

__version__ = "0.1.0"
__all__ = ["Client", "FinetuneError", "Job", "pack_directory", "to_dict"]
