{
  "format": 1,
  "algorithm": "ed25519",
  "signatures": [
    {
      "key_id": "e22603819c4b9ded",
      "signature": "/az7HyAnXJR7YUP2vjI4mrHaKBXI3ELMs7qsa/LfkBbE17fLZbhXCMOS5hyUUPYWAVYLgUrPVvd/KqLzYqGIAg=="
    }
  ]
}
