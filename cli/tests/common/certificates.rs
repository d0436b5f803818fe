//! A CA and a server certificate it signed, made for a test, in PEM files.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1, in PEM
/// files: `ca.pem`, `cert.pem`, `key.pem` (mode 600).
pub struct Certificates {
    pub dir: tempfile::TempDir,
}

impl Certificates {
    pub fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name.push(DnType::CommonName, "wasmux test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("server parameters");
        // Its own name: one equal to the CA's would look self-signed.
        server.distinguished_name = DistinguishedName::new();
        server.distinguished_name.push(DnType::CommonName, "localhost");
        server.use_authority_key_identifier_extension = true;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = server.signed_by(&key, &issuer).expect("server certificate");

        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write ca.pem");
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).expect("write cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key.pem");
        set_mode(&key_path, 0o600);
        Self { dir }
    }

    /// The path of `ca.pem`, `cert.pem` or `key.pem`.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().expect("utf-8 path").to_owned()
    }
}

/// Sets `path`'s permission bits (a key others may read is refused).
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
