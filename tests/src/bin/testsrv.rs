//! A backend for the tests: answers TCP connections with its name and then
//! echoes lines; answers UDP datagrams with "NAME payload". Dual-stack.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("usage: canary-testsrv --name NAME --port PORT"))
            .clone()
    };
    let name = get("--name");
    let port: u16 = get("--port").parse().expect("port");
    let any: SocketAddr = format!("[::]:{port}").parse().unwrap();

    let tcp = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    tcp.set_only_v6(false).unwrap();
    tcp.set_reuse_address(true).unwrap();
    tcp.bind(&any.into()).unwrap();
    tcp.listen(1024).unwrap();
    let tcp: TcpListener = tcp.into();
    let udp = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).unwrap();
    udp.set_only_v6(false).unwrap();
    udp.bind(&any.into()).unwrap();
    let udp: UdpSocket = udp.into();

    let udp_name = name.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let mut reply = format!("{udp_name} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = udp.send_to(&reply, from);
        }
    });
    println!("listening");
    let _ = std::io::stdout().flush();

    let open = Arc::new(AtomicUsize::new(0));
    for stream in tcp.incoming() {
        let Ok(mut stream) = stream else { continue };
        if open.load(Ordering::SeqCst) >= 4096 {
            continue; // dropped: closes the connection
        }
        open.fetch_add(1, Ordering::SeqCst);
        let (name, open) = (name.clone(), open.clone());
        std::thread::spawn(move || {
            let _ = stream.write_all(format!("{name}\n").as_bytes());
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if stream.write_all(line.as_bytes()).is_err() {
                    break;
                }
                line.clear();
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}
