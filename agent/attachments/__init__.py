"""Files in and out: what people share with a question, and files a reply posts back.

`models` holds the values (an attachment and its fetcher, a file out, what the chain records, the limits);
`convert` turns bytes into model input; `reader` decides what the model gets and what the reply must name.
Adapters only translate a platform's files into `Attachment`s with a fetcher bound to the platform's auth.
"""

from agent.attachments.models import (
    Attachment,
    AttachmentRecord,
    AttachmentRefused,
    Fetch,
    Limits,
    Outbox,
    OutFile,
)

__all__ = ["Attachment", "AttachmentRecord", "AttachmentRefused", "Fetch", "Limits", "OutFile", "Outbox"]
