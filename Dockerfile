# varstore's server in a container: docker build -t varstore . && docker run -p 127.0.0.1:50051:50051 varstore
#
# The log is a SQLite file in the /data volume. The server listens on 0.0.0.0 (the only
# address a published port reaches) without TLS, so the default command passes --insecure:
# publish the port on loopback as above, or give TLS instead (see the README, "Docker").
FROM python:3.11-slim

COPY . /tmp/varstore
RUN pip install --no-cache-dir /tmp/varstore \
    && rm -rf /tmp/varstore \
    && useradd --system --home-dir /data varstore \
    && mkdir /data \
    && chown varstore /data

USER varstore
VOLUME ["/data"]
EXPOSE 50051
ENTRYPOINT ["varstore", "serve"]
CMD ["--db", "/data/varstore.db", "--listen", "0.0.0.0:50051", "--insecure"]
