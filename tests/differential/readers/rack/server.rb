# frozen_string_literal: true

# Differential reader: Rack 2.2 (Debian's ruby-rack) behind Rack::MethodOverride, served by WEBrick through
# Rack::Handler::WEBrick. It echoes what Rack parsed: Rack::Request#GET, #POST (files split out), #path_info,
# the REQUEST_METHOD after the override, and Ruby's JSON.parse of a JSON body.
#
#   ruby server.rb PORT

require 'json'
require 'logger'
require 'rack'
require 'rack/handler/webrick'
require 'webrick'

# Strings from Rack's parsers are binary or possibly invalid UTF-8: make them printable JSON without raising.
def clean(value)
  case value
  when String then value.dup.force_encoding(Encoding::UTF_8).scrub
  when Array then value.map { |v| clean(v) }
  when Hash then value.each_with_object({}) { |(k, v), h| h[clean(k.to_s)] = clean(v) }
  else value
  end
end

# Rack's multipart parser turns a file part into a Hash carrying a :tempfile.
def file_hash?(value)
  value.is_a?(Hash) && value.key?(:tempfile)
end

# Drop the file hashes from the params and collect the multipart field names they came from.
def split_files(value, files)
  case value
  when Hash
    if file_hash?(value)
      files << value[:name].to_s
      return :file
    end
    value.each_with_object({}) do |(k, v), h|
      kept = split_files(v, files)
      h[k] = kept unless kept == :file
    end
  when Array
    value.map { |v| split_files(v, files) }.reject { |v| v == :file }
  else
    value
  end
end

class Reader
  JSON_TYPE = %r{\Aapplication/(?:[^;]*\+)?json\z}i.freeze

  def call(env)
    req = Rack::Request.new(env)
    errors = []
    files = []

    query = begin
      req.GET
    rescue StandardError => e
      errors << "query: #{e.class}: #{e.message}"
      {}
    end

    form = nil
    if req.form_data? || req.parseable_data?
      form = begin
        split_files(req.POST, files)
      rescue StandardError => e
        errors << "form: #{e.class}: #{e.message}"
        {}
      end
    end

    json = nil
    if req.media_type && req.media_type.match?(JSON_TYPE)
      input = req.body
      input.rewind
      raw = input.read.to_s
      input.rewind
      unless raw.empty?
        begin
          json = JSON.parse(raw)
        rescue JSON::ParserError, EncodingError => e
          errors << "json: #{e.class}: #{e.message}"
        end
      end
    end

    out = {
      'reader' => 'rack',
      'method' => req.request_method,
      'path' => req.path_info,
      'query' => query,
      'form' => form,
      'files' => files,
      'json' => json
    }
    out['error'] = errors.join('; ') unless errors.empty?
    body = JSON.generate(clean(out))
    [errors.empty? ? 200 : 400, { 'Content-Type' => 'application/json', 'Content-Length' => body.bytesize.to_s }, [body]]
  end
end

app = Rack::Builder.new do
  use Rack::MethodOverride
  run Reader.new
end

port = Integer(ARGV.fetch(0))
Rack::Handler::WEBrick.run(
  app,
  Host: '127.0.0.1',
  Port: port,
  DoNotReverseLookup: true,
  Logger: WEBrick::Log.new($stderr, WEBrick::BasicLog::WARN),
  AccessLog: []
)
