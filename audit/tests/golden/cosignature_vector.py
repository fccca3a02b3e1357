# The tlog-cosignature v1 vector of audit/src/cosignature.rs (independent_implementation_vector),
# made from the spec alone (c2sp.org/tlog-cosignature) with Python's `cryptography` (OpenSSL's Ed25519).
# Run: python3 audit/tests/golden/cosignature_vector.py (prints the vkey and the cosignature line).
import base64, hashlib, struct
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
name = "witness.example.com/w1"
seed = bytes(range(32))
checkpoint = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
ts = 1679315147
sk = Ed25519PrivateKey.from_private_bytes(seed)
pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
key_id = hashlib.sha256(name.encode() + b"\n" + b"\x04" + pk).digest()[:4]
msg = b"cosignature/v1\ntime " + str(ts).encode() + b"\n" + checkpoint.encode()
sig = sk.sign(msg)
line = "\u2014 " + name + " " + base64.b64encode(key_id + struct.pack(">Q", ts) + sig).decode()
vkey = name + "+" + key_id.hex() + "+" + base64.b64encode(b"\x04" + pk).decode()
print(vkey)
print(line)
