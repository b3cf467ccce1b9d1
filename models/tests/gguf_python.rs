//! vigil's GGUF reader, writer and block codecs against the Python `gguf` package (the llama.cpp
//! authors' implementation), on the real model files and on files vigil writes.

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value as Json;
use vigil_models::gguf::{codec, Array, GgmlType, Gguf, GgufWriter, Value};
use vigil_models::testing::{model_for_test, python_with, repo_root, TempDir};

fn script() -> std::path::PathBuf {
    repo_root().join("tools/gguf_py_check.py")
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("run python");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Every element equal, bit for bit (both sides follow ggml's reference formulas in f32).
fn assert_same(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let bad = ours.iter().zip(theirs).position(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()));
    if let Some(i) = bad {
        panic!("{what}: element {i} differs: vigil {} vs gguf-py {}", ours[i], theirs[i]);
    }
}

#[test]
fn dequantization_matches_python_on_real_models() {
    let Some(mut py) = python_with(&["gguf", "numpy"]) else {
        return;
    };
    let cases: [(&str, &[(&str, GgmlType)]); 2] = [
        (
            "smollm2",
            &[
                ("blk.0.attn_q.weight", GgmlType::Q4_1),
                ("blk.29.ffn_down.weight", GgmlType::Q4_1),
                ("blk.0.attn_norm.weight", GgmlType::F32),
                ("token_embd.weight", GgmlType::Q8_0),
            ],
        ),
        (
            "gemma3",
            &[
                ("blk.0.attn_q.weight", GgmlType::Q5_0),
                ("blk.0.attn_output.weight", GgmlType::Q4_K),
                ("blk.0.ffn_down.weight", GgmlType::Q6_K),
                ("blk.0.attn_v.weight", GgmlType::Q8_0),
            ],
        ),
    ];
    for (model, tensors) in cases {
        let Some(path) = model_for_test(model) else {
            continue;
        };
        let g = Gguf::open(&path).unwrap();
        let tmp = TempDir::new("dequant");
        let mut cmd = std::mem::replace(&mut py, python_with(&["gguf"]).unwrap());
        cmd.arg(script()).arg("dequant").arg(&path).arg(tmp.path());
        cmd.args(tensors.iter().map(|t| t.0));
        run(cmd);
        for (name, ty) in tensors {
            assert_eq!(g.tensor(name).unwrap().ty, *ty, "{model} {name} type");
            let ours = g.tensor_f32(name).unwrap();
            let theirs = read_f32(&tmp.path().join(format!("{name}.f32")));
            assert_same(&format!("{model} {name} ({ty})"), &ours, &theirs);
        }
    }
}

#[test]
fn quantization_matches_python_bytes() {
    if python_with(&["gguf", "numpy"]).is_none() {
        return;
    }
    // Varied blocks: random, all zero, constant, one outlier, tiny values, negatives only.
    let mut x: Vec<f32> = Vec::new();
    let mut s = 0x1234_5678u32;
    for _ in 0..32 * 40 {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        x.push(((s >> 8) as f32 / 16_777_216.0 - 0.5) * 6.0);
    }
    x.extend([0.0; 32]);
    x.extend([0.75; 32]);
    x.extend((0..32).map(|i| if i == 7 { 100.0 } else { 0.01 * i as f32 }));
    x.extend((0..32).map(|i| 1e-7 * i as f32));
    x.extend((0..32).map(|i| -1.0 - i as f32));
    let tmp = TempDir::new("quant");
    let src = tmp.path().join("x.f32");
    std::fs::write(&src, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    for ty in
        [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16]
    {
        let dst = tmp.path().join(format!("{ty}.bin"));
        let mut cmd = python_with(&["gguf"]).unwrap();
        cmd.arg(script()).arg("quantize").arg(ty.name()).arg(&src).arg(&dst);
        run(cmd);
        let theirs = std::fs::read(&dst).unwrap();
        let ours = codec::quantize(ty, &x).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ty} size");
        if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            let block = i / ty.type_size();
            panic!(
                "{ty}: byte {i} (block {block}) differs: vigil {:02x?} vs gguf-py {:02x?}",
                &ours[block * ty.type_size()..(block + 1) * ty.type_size()],
                &theirs[block * ty.type_size()..(block + 1) * ty.type_size()]
            );
        }
    }
}

fn every_value_type() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::string("llama")),
        ("general.name", Value::string("vigil writer test ✓")),
        ("test.u8", Value::U8(200)),
        ("test.i8", Value::I8(-100)),
        ("test.u16", Value::U16(60000)),
        ("test.i16", Value::I16(-30000)),
        ("test.u32", Value::U32(4_000_000_000)),
        ("test.i32", Value::I32(-2_000_000_000)),
        ("test.f32", Value::F32(1.5)),
        ("test.bool", Value::Bool(true)),
        ("test.u64", Value::U64(1 << 40)),
        ("test.i64", Value::I64(-(1 << 40))),
        ("test.f64", Value::F64(-2.25)),
        ("test.strings", Value::str_array(["a", "", "ünï", "<|im_end|>"])),
        ("test.f32s", Value::f32_array([0.5, -1.0, 3.25])),
        ("test.i32s", Value::i32_array([1, -2, 3])),
        ("test.empty", Value::Array(Array::U8(vec![]))),
    ]
}

#[test]
fn written_files_are_read_back_by_vigil_and_python() {
    let mut w = GgufWriter::new();
    for (k, v) in every_value_type() {
        w.set(k, v);
    }
    let ramp = |n: usize| (0..n).map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.0).collect::<Vec<f32>>();
    let tensors: Vec<(&str, Vec<u64>, GgmlType)> = vec![
        ("a.f32", vec![3, 5], GgmlType::F32),
        ("b.f16", vec![7], GgmlType::F16),
        ("c.bf16", vec![4, 3], GgmlType::BF16),
        ("d.q8_0", vec![64, 3], GgmlType::Q8_0),
        ("e.q4_1", vec![32, 5], GgmlType::Q4_1),
        ("f.q4_0", vec![96, 1, 2], GgmlType::Q4_0),
        ("g.q5_0", vec![32, 2], GgmlType::Q5_0),
    ];
    for (name, dims, ty) in &tensors {
        let n = dims.iter().product::<u64>() as usize;
        w.add_f32(*name, dims, *ty, &ramp(n)).unwrap();
    }
    let tmp = TempDir::new("writer");
    let path = tmp.path().join("written.gguf");
    w.write_file(&path).unwrap();

    // vigil reads it back
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    for (k, v) in every_value_type() {
        assert_eq!(g.get(k), Some(&v), "{k}");
    }
    for (name, dims, ty) in &tensors {
        let t = g.tensor(name).unwrap();
        assert_eq!((&t.dims, t.ty), (dims, *ty));
        assert_eq!(t.offset % 32, 0);
        let n = dims.iter().product::<u64>() as usize;
        let expect = {
            let q = codec::quantize(*ty, &ramp(n)).unwrap();
            let mut y = vec![0f32; n];
            codec::dequantize(*ty, &q, &mut y).unwrap();
            y
        };
        assert_eq!(g.tensor_f32(name).unwrap(), expect, "{name}");
    }

    // Python gguf reads it too
    let Some(mut py) = python_with(&["gguf", "numpy"]) else {
        return;
    };
    py.arg(script()).arg("read").arg(&path);
    let j: Json = serde_json::from_str(&run(py)).unwrap();
    let meta = j["metadata"].as_object().unwrap();
    for (k, v) in every_value_type() {
        let got = &meta[k];
        match &v {
            Value::Array(a) => {
                if !a.is_empty() {
                    // (gguf-py reports no element type for an empty array)
                    assert_eq!(got["array"][1].as_u64(), Some(a.elem_type() as u64), "{k} element type");
                }
                assert_eq!(got["value"].as_array().unwrap().len(), a.len(), "{k} length");
                if let Some(strings) = a.as_strings() {
                    let theirs: Vec<&str> =
                        got["value"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
                    assert_eq!(theirs, strings.iter().map(String::as_str).collect::<Vec<_>>(), "{k}");
                }
                if let Some(nums) = a.to_f64() {
                    let theirs: Vec<f64> =
                        got["value"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                    assert_eq!(theirs, nums, "{k}");
                }
            }
            _ => {
                assert_eq!(got["type"].as_u64(), Some(v.value_type() as u64), "{k} type");
                match v {
                    Value::String(s) => assert_eq!(got["value"].as_str(), Some(s.as_str())),
                    Value::Bool(b) => assert_eq!(got["value"].as_bool(), Some(b)),
                    other => assert_eq!(got["value"].as_f64(), other.as_f64(), "{k}"),
                }
            }
        }
    }
    let py_tensors: HashMap<String, &Json> =
        j["tensors"].as_array().unwrap().iter().map(|t| (t["name"].as_str().unwrap().to_string(), t)).collect();
    for (name, dims, ty) in &tensors {
        let t = py_tensors[*name];
        assert_eq!(t["type"].as_str(), Some(ty.name()), "{name}");
        let py_dims: Vec<u64> = t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(&py_dims, dims, "{name} dims");
        let ours: f64 = g.tensor_f32(name).unwrap().iter().map(|&v| v as f64).sum();
        assert!((ours - t["sum"].as_f64().unwrap()).abs() < 1e-4, "{name} sum");
    }
}

#[test]
fn reader_agrees_with_python_on_real_models() {
    for model in ["smollm2", "gemma3"] {
        let Some(path) = model_for_test(model) else {
            continue;
        };
        let Some(mut py) = python_with(&["gguf", "numpy"]) else {
            return;
        };
        py.arg(script()).arg("read").arg(&path).arg("--no-sums");
        let j: Json = serde_json::from_str(&run(py)).unwrap();
        let g = Gguf::open(&path).unwrap();
        let meta = j["metadata"].as_object().unwrap();
        assert_eq!(meta.len(), g.metadata().len(), "{model} metadata count");
        for (k, v) in g.metadata() {
            let got = &meta[k.as_str()];
            match v {
                Value::Array(a) => {
                    assert_eq!(got["value"].as_array().unwrap().len(), a.len(), "{k}")
                }
                Value::String(s) => assert_eq!(got["value"].as_str(), Some(s.as_str()), "{k}"),
                other => assert_eq!(got["type"].as_u64(), Some(other.value_type() as u64), "{k}"),
            }
        }
        let pt = j["tensors"].as_array().unwrap();
        assert_eq!(pt.len(), g.tensors().len());
        for (ours, theirs) in g.tensors().iter().zip(pt) {
            assert_eq!(theirs["name"].as_str(), Some(ours.name.as_str()));
            assert_eq!(theirs["type"].as_str(), Some(ours.ty.name()), "{}", ours.name);
            assert_eq!(theirs["offset"].as_u64(), Some(g.data_offset() + ours.offset), "{}", ours.name);
        }
    }
}
