//! A throwaway PKI for the TLS tests: a CA, a server certificate for `localhost` and
//! `127.0.0.1`, a client certificate it signed and one a rogue CA signed (PEM strings), made
//! fresh by every test with rcgen, so no key is ever kept in the repository. The one PKI of
//! every TLS test (web endpoint, control channel, Kafka, gala-gopher REST), so that a change
//! rcgen or a TLS stack asks for is made once.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

pub struct Pki {
    pub ca: String,
    /// (certificate, key) of the server.
    pub server: (String, String),
    /// A client the CA signed.
    pub client: (String, String),
    /// A client a CA the server does not trust signed.
    pub rogue: (String, String),
    /// That untrusted CA, for a client that must not trust the server.
    pub rogue_ca: String,
}

fn ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: with an empty one, a leaf's issuer equals its subject to OpenSSL.
    p.distinguished_name
        .push(rcgen::DnType::CommonName, cn.to_owned());
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(names: &[&str], issuer: &CertifiedIssuer<'_, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn pki() -> Pki {
    let (ca, rogue_ca) = (ca("gopher test CA"), ca("rogue CA"));
    Pki {
        server: leaf(&["localhost", "127.0.0.1"], &ca),
        client: leaf(&["manager"], &ca),
        rogue: leaf(&["manager"], &rogue_ca),
        ca: ca.pem(),
        rogue_ca: rogue_ca.pem(),
    }
}

/// Writes `text` to `dir/name`; the path as a string.
pub fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}
