"""Python client for the DAFlow try-on service.

    from tryon_client import TryOnClient, TryOnError

    with TryOnClient("http://127.0.0.1:8000", api_key="...") as client:
        result = client.tryon(person="me.jpg", keypoints="me_keypoints.json", cloth="shirt.jpg")
        result.save("tryon.jpg"); print(result.timings)
        for look in client.tryon_batch(masked_model="masked.png", pose="pose.png", cloths=["a.jpg", "b.jpg"]):
            print(look.index, look.error or look.timings)
        job = client.wait(client.submit_job(masked_model="masked.png", pose="pose.png", cloths=catalog))
        for look in client.results(job):
            look.save(f"look-{look.index}.jpg") if look.ok else print(look.index, look.error)
"""
from .aio import AsyncTryOnClient
from .errors import TryOnError
from .results import GarmentResult, Job, JobGarment, PreparedPerson, TryOnResult
from .sync import TryOnClient

__all__ = ["TryOnClient", "AsyncTryOnClient", "TryOnError", "TryOnResult", "GarmentResult", "PreparedPerson", "Job",
           "JobGarment"]
__version__ = "0.1.0"
