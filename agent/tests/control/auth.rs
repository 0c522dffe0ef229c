//! Who may call the control channel: the bearer token when one is configured, TLS and mTLS
//! with a CA the test makes itself (`common::pki`), and a public listener without either
//! refused at config check.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let port = free_port();
    let agent = Agent::start(&format!(
        "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\n[control]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    let bare = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = status_of(
        ProbeControlClient::new(bare)
            .list_probes(pb::ListProbesRequest {})
            .await,
    );
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut c = client(port).await;
    let mut req = Request::new(pb::ListProbesRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        status_of(c.list_probes(req).await).code(),
        Code::Unauthenticated
    );
    let mut req = Request::new(switch("system_meminfo", pb::Switch::Off));
    req.metadata_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    assert_eq!(
        status_of(c.set_probe(req).await).code(),
        Code::Unauthenticated
    );
    assert_eq!(
        get_with(&mut c, "s3cret-token").await.switch,
        pb::Switch::On as i32
    );

    // Health answers without a token (it says no more than a connect would).
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "gopher.control.v1.ProbeControl".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists the service, with the token only.
    let ask = || {
        tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let mut reflection = ServerReflectionClient::new(ch);
    let refused = reflection.server_reflection_info(Request::new(ask())).await;
    assert_eq!(status_of(refused).code(), Code::Unauthenticated);
    let mut req = Request::new(ask());
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    let answer = reflection
        .server_reflection_info(req)
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        services.contains(&"gopher.control.v1.ProbeControl"),
        "{services:?}"
    );
    drop(agent);
}

async fn get_with(c: &mut Ctl, token: &str) -> pb::Probe {
    let mut req = Request::new(pb::GetProbeRequest {
        name: "system_meminfo".into(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.get_probe(req).await.unwrap().into_inner()
}

async fn tls_client(
    port: u16,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<pb::ListProbesResponse, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    let ch = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    ProbeControlClient::with_interceptor(ch, DefaultToken::read())
        .list_probes(pb::ListProbesRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("call: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_on_a_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::pki();
    let write = |name: &str, text: &str| common::pki::write(dir.path(), name, text);
    let (ca, cert, key) = (
        write("ca.pem", &pki.ca),
        write("server.pem", &pki.server.0),
        write("server.key", &pki.server.1),
    );
    let port = free_port();
    let agent = Agent::start(&format!(
        "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\n[control]\nlisten = \"0.0.0.0:{port}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntls_client_ca = \"{ca}\"\n"
    ));
    let ok = tls_client(port, &pki.ca, Some((&pki.client.0, &pki.client.1)))
        .await
        .expect("a client with a certificate from the configured CA is served");
    assert!(ok.probes.iter().any(|p| p.name == "system_meminfo"));
    let no_cert = tls_client(port, &pki.ca, None).await;
    assert!(no_cert.is_err(), "served a client without a certificate");
    let rogue = tls_client(port, &pki.ca, Some((&pki.rogue.0, &pki.rogue.1))).await;
    assert!(
        rogue.is_err(),
        "served a client with an untrusted certificate"
    );
    // Plain HTTP/2 against the TLS port gets nothing.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(
            ProbeControlClient::with_interceptor(ch, DefaultToken::read())
                .list_probes(pb::ListProbesRequest {})
                .await
                .is_err()
        );
    }
    // The client certificate does not have to be checked: TLS alone on a public address.
    drop(agent);
    let port = free_port();
    let agent = Agent::start(&format!(
        "[[probes]]\nname = \"system_meminfo\"\nswitch = \"on\"\n[control]\nlisten = \"0.0.0.0:{port}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"
    ));
    assert!(tls_client(port, &pki.ca, None).await.is_ok());
    drop(agent);
}

#[test]
fn a_public_listener_without_protection_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probes.toml");
    std::fs::write(&path, "[control]\nlisten = \"0.0.0.0:8889\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gopher"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":2:") && err.contains("control.listen"),
        "{err}"
    );
    assert!(err.contains("insecure = true"), "{err}");
    // Writing it down is accepted.
    std::fs::write(
        &path,
        "[control]\nlisten = \"0.0.0.0:8889\"\ninsecure = true\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gopher"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
