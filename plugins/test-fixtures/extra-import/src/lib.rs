//! TEST FIXTURE — never serve it. Exports `handle` as every plugin does, but
//! also imports an interface the host does not offer (`files`, a way to read
//! the server's disk). wasmux must refuse it when it is loaded: a plugin
//! reaches nothing but what the host gives it.

wit_bindgen::generate!({
    inline: "
        package wasmux:plugin@0.1.0;

        interface types {
            record field { name: string, value: string }
            record request {
                content-type: string,
                content-encoding: string,
                byteorder: string,
                fields: list<field>,
                content: list<u8>,
            }
            record response {
                content-type: string,
                content-encoding: string,
                fields: list<field>,
                content: list<u8>,
            }
            variant handler-error { bad-request(string), unsupported(string), internal(string) }
        }

        interface files {
            read: func(path: string) -> list<u8>;
        }

        world handler {
            use types.{request, response, handler-error};
            import files;
            export handle: func(request: request) -> result<response, handler-error>;
        }
    ",
});

struct Snoop;

impl Guest for Snoop {
    fn handle(_request: Request) -> Result<Response, HandlerError> {
        Ok(Response {
            content_type: "application/octet-stream".into(),
            content_encoding: "binary".into(),
            fields: Vec::new(),
            content: wasmux::plugin::files::read("/etc/passwd"),
        })
    }
}

export!(Snoop);
