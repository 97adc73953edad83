//! The identity a verified client certificate proves: its subject, common
//! name and alternative names. TLS has already checked the chain against
//! the listener's client CA; this only reads the leaf.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::caller::CertificateIdentity;

/// A client certificate that verified but cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the client certificate could not be parsed")]
pub struct UnreadableCertificate;

/// Reads the leaf certificate (DER) a client presented.
pub fn identity(der: &[u8]) -> Result<CertificateIdentity, UnreadableCertificate> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| UnreadableCertificate)?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let alternative_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    Some((*s).to_owned())
                }
                GeneralName::IPAddress(bytes) => ip_text(bytes),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(UnreadableCertificate),
    };
    Ok(CertificateIdentity {
        subject: subject.to_string(),
        common_name,
        alternative_names,
    })
}

/// [`identity`] of the first certificate in a PEM file's text.
pub fn identity_from_pem(pem: &[u8]) -> Result<CertificateIdentity, UnreadableCertificate> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| UnreadableCertificate)?;
    identity(&pem.contents)
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}
