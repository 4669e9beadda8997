use serde_json::json;

use super::*;

fn parse(v: Value) -> Result<ApplyDoc> {
    ApplyDoc::parse(&v.to_string())
}

fn err(v: Value) -> String {
    parse(v).unwrap_err().to_string()
}

#[test]
fn a_document_is_read_with_its_defaults() {
    let doc = parse(json!({"vms": [
        {"name": "web1", "spec": {"memory": 512}, "vcpus": 2, "memory": 1024,
         "nfs_shares": [{"host_path": "192.168.151.2:/export", "guest_path": "/mnt/data"}],
         "file_injections": [{"source": "app.conf", "destination": "/etc/app.conf", "mode": "0640", "owner": "root:adm"}]},
        {"name": "db1", "template": "small", "final_snapshot": false},
        {"name": "old", "final_snapshot": "ready"}
    ]}))
    .unwrap();
    let web = &doc.vms[0];
    assert_eq!(
        web.origin,
        Some(Origin::Spec(json!({"memory": 512, "name": "web1"})))
    );
    assert_eq!(
        (web.vcpus, web.memory, web.agent_timeout_secs),
        (Some(2), Some(1024), 0)
    );
    assert_eq!(
        web.nfs_shares[0].options,
        crate::services::nfs_rules::DEFAULT_OPTIONS
    );
    assert_eq!(
        (web.files[0].mode, web.files[0].owner.as_deref()),
        (0o640, Some("root:adm"))
    );
    assert_eq!(web.final_snapshot.as_deref(), Some(DEFAULT_SNAPSHOT));
    assert_eq!(
        doc.vms[1].origin,
        Some(Origin::Template {
            name: "small".into(),
            overrides: json!({"name": "db1"})
        })
    );
    assert_eq!(doc.vms[1].final_snapshot, None);
    assert_eq!(
        (
            doc.vms[2].origin.clone(),
            doc.vms[2].final_snapshot.as_deref()
        ),
        (None, Some("ready"))
    );
}

#[test]
fn every_refusal_names_its_place() {
    let vm = |extra: Value| {
        let mut v = json!({"name": "web1"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"vms": [v]})
    };
    for (doc, start) in [
        (json!({"vms": []}), "vms:"),
        (
            json!({"vms": [{"name": "a"}, {"name": "a"}]}),
            "vms[1].name: 'a' is declared twice",
        ),
        (json!({"vms": [{"name": "-x"}]}), "vms[0].name:"),
        (
            vm(json!({"spec": {}, "template": "t"})),
            "vms[0]: give spec or template",
        ),
        (vm(json!({"spec": {"name": "other"}})), "vms[0].spec.name:"),
        (
            vm(json!({"overrides": {}})),
            "vms[0].overrides: only with template",
        ),
        (vm(json!({"vcpus": 0})), "vms[0].vcpus:"),
        (vm(json!({"memory": 1})), "vms[0].memory:"),
        (
            vm(json!({"agent_timeout_secs": 100000})),
            "vms[0].agent_timeout_secs:",
        ),
        (
            vm(json!({"nfs_shares": [{"host_path": "nas", "guest_path": "/m"}]})),
            "vms[0].nfs_shares[0].host_path:",
        ),
        (
            vm(
                json!({"nfs_shares": [{"host_path": "n:/e", "guest_path": "/m"}, {"host_path": "n:/f", "guest_path": "/m/"}]}),
            ),
            "vms[0].nfs_shares[1].guest_path: /m is declared twice",
        ),
        (
            vm(json!({"file_injections": [{"source": "a", "destination": "etc/x"}]})),
            "vms[0].file_injections[0].destination:",
        ),
        (
            vm(json!({"file_injections": [{"source": "a", "destination": "/x", "mode": "999"}]})),
            "vms[0].file_injections[0].mode:",
        ),
        (
            vm(json!({"file_injections": [{"source": "a", "destination": "/x", "owner": "a b"}]})),
            "vms[0].file_injections[0].owner:",
        ),
        (
            vm(json!({"file_injections": [{"source": "", "destination": "/x"}]})),
            "vms[0].file_injections[0].source:",
        ),
        (
            vm(json!({"final_snapshot": "a b"})),
            "vms[0].final_snapshot:",
        ),
        (
            vm(json!({"final_snapshot": null})),
            "vms[0].final_snapshot:",
        ),
        (
            vm(json!({"file_injections": [{"source": "a", "destination": "/x", "mode": "+644"}]})),
            "vms[0].file_injections[0].mode:",
        ),
        (
            vm(json!({"file_injections": [{"source": "dir/a", "destination": "/x"}]})),
            "vms[0].file_injections[0].source:",
        ),
        (
            vm(json!({"file_injections": [{"source": "/etc/../x", "destination": "/x"}]})),
            "vms[0].file_injections[0].source:",
        ),
        (vm(json!({"colour": 1})), "vms[0]: unknown field `colour`"),
        (
            json!({"vms": [{"name": "a"}, {"vcpus": 2}]}),
            "vms[1]: missing field `name`",
        ),
        (
            vm(json!({"vcpus": "two"})),
            "vms[0].vcpus: invalid type: string",
        ),
        (vm(json!({"memory": -1})), "vms[0].memory: invalid value"),
        (
            vm(json!({"nfs_shares": {}})),
            "vms[0].nfs_shares: invalid type: map",
        ),
        (
            vm(json!({"nfs_shares": [{"host_path": "n:/e"}]})),
            "vms[0].nfs_shares[0]: missing field `guest_path`",
        ),
        (
            vm(json!({"file_injections": [{"source": "a", "destination": "/x", "mode": 644}]})),
            "vms[0].file_injections[0].mode: invalid type: integer",
        ),
        (
            vm(json!({"file_injections": [{"source": "a", "destination": "/x", "size": 1}]})),
            "vms[0].file_injections[0]: unknown field `size`",
        ),
        (json!({"vms": 1}), "vms: must be a list"),
        (json!({"vms": [3]}), "vms[0]: must be an object"),
        (
            vm(json!({"nfs_shares": ["n:/e /m"]})),
            "vms[0].nfs_shares[0]: must be an object",
        ),
        (
            json!({"vms": (0..3).map(|i| json!({"name": format!("v{i}"),
                "file_injections": (0..100).map(|j| json!({"source": "a", "destination": format!("/f{j}")})).collect::<Vec<_>>()}))
                .collect::<Vec<_>>()}),
            "vms: at most 256 file_injections in all",
        ),
        (
            vm(json!({"clone": {"source": "a"}, "spec": {}})),
            "vms[0]: give one of spec, template and clone",
        ),
        (
            vm(json!({"clone": {}})),
            "vms[0].clone: missing field `source`",
        ),
        (
            vm(json!({"clone": {"source": "a", "mode": "deep"}})),
            "vms[0].clone.mode: full or linked",
        ),
        (
            vm(json!({"clone": {"source": "web1"}})),
            "vms[0].clone.source:",
        ),
        (
            vm(json!({"clone": {"source": "a b"}})),
            "vms[0].clone.source:",
        ),
        (json!({"hosts": []}), "document: unknown field `hosts`"),
    ] {
        let e = err(doc.clone());
        assert!(e.starts_with(start), "{doc}: {e}");
    }
}

#[test]
fn a_vm_may_be_made_as_a_clone() {
    let doc = parse(
        json!({"vms": [{"name": "b", "clone": {"source": "a", "mode": "linked"}, "vcpus": 2}]}),
    )
    .unwrap();
    assert_eq!(
        doc.vms[0].origin,
        Some(Origin::Clone {
            source: "a".into(),
            linked: true
        })
    );
    assert_eq!(doc.vms[0].vcpus, Some(2));
    let doc = parse(json!({"vms": [{"name": "b", "clone": {"source": "a"}}]})).unwrap();
    assert!(matches!(
        doc.vms[0].origin,
        Some(Origin::Clone { linked: false, .. })
    ));
}

#[test]
fn keys_given_twice_and_bad_text_are_refused() {
    let e = ApplyDoc::parse(r#"{"vms": [{"name": "a", "name": "b"}]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate key vms[0].name"), "{e}");
    let e = ApplyDoc::parse("{\"vms\": [").unwrap_err().to_string();
    assert!(e.starts_with("document is not valid JSON"), "{e}");
}

fn schema() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(include_str!("../../dbus/schemas/apply.schema.json")).unwrap();
    assert_eq!(schema["additionalProperties"], json!(false));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .offline()
        .build(&schema)
        .unwrap()
}

/// The schema accepts exactly what the parser accepts, on a table of cases.
#[test]
fn the_schema_agrees_with_the_parser() {
    let s = schema();
    for doc in [
        json!({"vms": [{"name": "web1"}]}),
        json!({"vms": [{"name": "web1", "spec": {"memory": 512}, "vcpus": 2, "memory": 1024, "agent_timeout_secs": 60,
            "nfs_shares": [{"host_path": "192.168.151.2:/export", "guest_path": "/mnt/data", "options": "vers=4.2"}],
            "file_injections": [{"source": "app.conf", "destination": "/etc/app.conf", "mode": "0640", "owner": "root:adm"}],
            "final_snapshot": "ready"}]}),
        json!({"vms": [{"name": "db", "template": "small", "overrides": {"memory": 2048}, "final_snapshot": false}]}),
        json!({"vms": []}),
        json!({"vms": [{"name": "web1", "spec": {}, "template": "t"}]}),
        json!({"vms": [{"name": "-x"}]}),
        json!({"vms": [{"name": "x", "vcpus": 0}]}),
        json!({"vms": [{"name": "x", "memory": 8}]}),
        json!({"vms": [{"name": "x", "nfs_shares": [{"host_path": "nas", "guest_path": "/m"}]}]}),
        json!({"vms": [{"name": "x", "file_injections": [{"source": "a", "destination": "/x", "mode": "999"}]}]}),
        json!({"vms": [{"name": "x", "file_injections": [{"source": "a", "destination": "/x/"}]}]}),
        json!({"vms": [{"name": "x", "final_snapshot": "a b"}]}),
        json!({"vms": [{"name": "x", "final_snapshot": null}]}),
        json!({"vms": [{"name": "x", "overrides": {}}]}),
        json!({"vms": [{"name": "x", "file_injections": [{"source": "a", "destination": "/x", "mode": "+644"}]}]}),
        json!({"vms": [{"name": "x", "file_injections": [{"source": "/srv/a", "destination": "/x", "mode": "0600"}]}]}),
        json!({"vms": [{"name": "x", "file_injections": [{"source": "dir/a", "destination": "/x"}]}]}),
        json!({"vms": [{"name": "x", "file_injections": [{"source": "/etc/../x", "destination": "/x"}]}]}),
        json!({"vms": [{"name": "x", "colour": 1}]}),
        json!({"hosts": []}),
        json!({"vms": [{"name": "b", "clone": {"source": "a", "mode": "linked"}}]}),
        json!({"vms": [{"name": "b", "clone": {"source": "a"}, "template": "t"}]}),
        json!({"vms": [{"name": "b", "clone": {"source": "a", "mode": "deep"}}]}),
        json!({"vms": [{"name": "b", "clone": {}}]}),
    ] {
        assert_eq!(
            s.is_valid(&doc),
            parse(doc.clone()).is_ok(),
            "schema and parser disagree on {doc}"
        );
    }
}
