"""Local stand-ins for the pipeline's external APIs, speaking what the real clients send.

- :mod:`emulators.gemini` — Gemini ``generateContent`` / ``batchEmbedContents`` /
  ``embedContent`` as the google-genai SDK calls them.
- :mod:`emulators.video` — the "Nano Banana" video job API: submit, status, download; it
  renders a real short MP4 with ffmpeg.
- :mod:`emulators.s3` — moto's S3 application on its own (boto3's S3 client talks to it).
- :mod:`emulators.smtp_sink` — an SMTP server (aiosmtpd) that stores every message on disk.

The HTTP emulators share :mod:`emulators.knobs`: latency, error rate and outage windows
settable per test over HTTP (``POST /_emulator/config``), and a record of the headers
they received (``GET /_emulator/requests``).
"""
